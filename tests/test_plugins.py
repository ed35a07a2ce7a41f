"""Custom node plugins through the real command: found in the current folder or by file
path, from --plugin or FLOWRUN_PLUGINS, and a plugin that cannot be loaded is named in
one line (exit 2), never a traceback."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.cli.test_main import flowrun, serving

PLUGIN = '''
import flowrun


@flowrun.node("shout")
async def shout(ctx: flowrun.NodeContext, *, text: str) -> dict:
    return {"text": text.upper()}
'''

WORKFLOW = '''
name: shout
inputs:
  text: {type: string, required: true}
nodes:
  - {id: s, type: shout, text: "{{ inputs.text }}"}
outputs:
  loud: "{{ nodes.s.text }}"
'''


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A folder as a user has it: mymodule.py and shout.yaml, which needs it."""
    (tmp_path / "mymodule.py").write_text(PLUGIN)
    (tmp_path / "shout.yaml").write_text(WORKFLOW)
    return tmp_path


def test_plugin_module_in_the_current_folder(folder: Path) -> None:
    out = flowrun("run", "--plugin", "mymodule", "shout.yaml", "-i", "text=hi", cwd=folder)
    assert out.returncode == 0, out.stderr
    assert '"loud": "HI"' in out.stdout
    out = flowrun("validate", "--plugin", "mymodule", "shout.yaml", cwd=folder)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "shout.yaml: ok" in out.stdout


def test_plugin_by_file_path(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    out = flowrun("run", "--plugin", "./mymodule.py", "shout.yaml", "-i", "text=hi",
                  cwd=folder)
    assert out.returncode == 0, out.stderr
    assert '"loud": "HI"' in out.stdout
    # From elsewhere, by absolute path; the plugin imports a module beside it.
    lib = folder / "lib"
    lib.mkdir()
    (lib / "loudness.py").write_text("def loud(text):\n    return text.upper() + '!'\n")
    (lib / "myplugin.py").write_text(PLUGIN.replace("text.upper()", "loudness.loud(text)")
                                     .replace("import flowrun", "import flowrun\nimport loudness"))
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    out = flowrun("run", "--plugin", str(lib / "myplugin.py"), str(folder / "shout.yaml"),
                  "-i", "text=hi", cwd=elsewhere)
    assert out.returncode == 0, out.stderr
    assert '"loud": "HI!"' in out.stdout


def test_plugins_from_the_environment(folder: Path) -> None:
    env = {"FLOWRUN_PLUGINS": "mymodule"}
    out = flowrun("run", "shout.yaml", "-i", "text=hi", cwd=folder, env=env)
    assert out.returncode == 0, out.stderr
    assert '"loud": "HI"' in out.stdout
    out = flowrun("validate", "shout.yaml", cwd=folder, env=env)
    assert out.returncode == 0 and "shout.yaml: ok" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize(("plugin", "source", "why"), [
    ("nosuchmodule", None, "No module named 'nosuchmodule'"),
    ("./nosuchfile.py", None, "no such file"),
    ("broken", "import flowrun\n1 / 0\n",
     "ZeroDivisionError: division by zero (broken.py, line 2)"),
    ("./typo.py", "def f(:\n", "invalid syntax"),
])
def test_a_plugin_that_cannot_be_loaded_is_one_line(folder: Path, plugin: str,
                                                    source: str | None, why: str) -> None:
    if source is not None:
        (folder / f"{plugin.removeprefix('./').removesuffix('.py')}.py").write_text(source)
    for command in (("run", "shout.yaml", "-i", "text=hi"), ("validate", "shout.yaml"),
                    ("serve", "--db", "x.db")):
        out = flowrun(*command, "--plugin", plugin, cwd=folder)
        assert out.returncode == 2, (command, out.stdout, out.stderr)
        assert out.stderr.startswith(f"error: cannot load plugin {plugin!r}: "), out.stderr
        assert why in out.stderr and out.stderr.count("\n") == 1, out.stderr
        assert "Traceback" not in out.stderr and out.stdout == ""
    assert not (folder / "x.db").exists()


def test_serve_with_a_plugin_in_the_current_folder(folder: Path) -> None:
    (folder / "workflows").mkdir()
    (folder / "shout.yaml").rename(folder / "workflows" / "shout.yaml")
    with serving("--plugin", "mymodule", "--workflows", "workflows", "--no-auth",
                 cwd=folder) as served:
        run = httpx.post(f"{served.url}/workflows/shout/run-sync",
                         json={"inputs": {"text": "hi"}}, timeout=30).json()
        assert run["outputs"] == {"loud": "HI"}, run
