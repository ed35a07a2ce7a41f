/* A pure, incremental parser of the text/event-stream format (the HTML standard's
 * "interpreting an event stream"): feed it chunks as they arrive, cut anywhere, and
 * get the events they complete. No network, no DOM: it can be tested alone.
 *
 * Lines end with CRLF, LF or CR (a CR at the end of one chunk and an LF at the start
 * of the next are one line end). Comments (": ping") and unknown fields are ignored;
 * data lines join with "\n"; "id:" sets the last event id, which stays for the events
 * after it; "retry:" (digits only) sets ``retry``, the reconnection time in ms. Bytes
 * are decoded as UTF-8 by the parser itself, so a character cut between two chunks
 * comes out whole. What follows the last blank line is an unfinished event: the end
 * of the stream drops it. */

const LINE_END = /\r\n|\r|\n/g;

export class SSEParser {
  constructor() {
    this.lastEventId = "";
    this.retry = null;
    this.decoder = new TextDecoder("utf-8");
    this.pending = "";       // the start of a line whose end has not come yet
    this.afterCR = false;    // the last chunk ended with CR: an LF first is its pair
    this.started = false;    // text has come: a byte order mark now is not the stream's
    this.resetEvent();
  }

  /** Feed a chunk (a string, or bytes to decode); returns the events it completed,
   *  each {id, event, data}. */
  feed(chunk) {
    let text = typeof chunk === "string" ? this.dropMark(chunk)
      : this.decoder.decode(chunk, { stream: true });
    if (!text) return [];
    if (this.afterCR && text[0] === "\n") text = text.slice(1);
    this.afterCR = text.endsWith("\r");
    return this.lines(text);
  }

  /** A byte order mark starting a stream fed as strings is dropped (from bytes, the
   *  decoder drops it). */
  dropMark(text) {
    if (this.started || !text) return text;
    this.started = true;
    return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
  }

  /** Split text at its line ends, the first line joined to what was pending. */
  lines(text) {
    const events = [];
    let start = 0;
    LINE_END.lastIndex = 0;
    for (let m = LINE_END.exec(text); m; m = LINE_END.exec(text)) {
      const event = this.line(this.pending + text.slice(start, m.index));
      if (event) events.push(event);
      this.pending = "";
      start = LINE_END.lastIndex;
    }
    this.pending += text.slice(start);
    return events;
  }

  /** One whole line: a field of the event being read, or (blank) its end. */
  line(line) {
    if (line === "") return this.dispatch();
    if (line.startsWith(":")) return null; // a comment, such as the server's ping
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    this.field(field, value);
    return null;
  }

  field(name, value) {
    if (name === "event") this.event = value;
    else if (name === "data") this.data.push(value);
    else if (name === "id" && !value.includes("\0")) this.lastEventId = value;
    else if (name === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
  }

  /** The event read so far, if it has data (else nothing: an event needs data). */
  dispatch() {
    const { event, data } = this;
    this.resetEvent();
    if (!data.length) return null;
    return { id: this.lastEventId, event: event || "message", data: data.join("\n") };
  }

  resetEvent() {
    this.event = "";
    this.data = [];
  }
}
