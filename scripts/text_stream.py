"""Text corpora read in bounded memory: input arguments (files, globs, directories) to a list of
files, and the files to a stream of documents, their blank-line-separated paragraphs, decoded a
chunk at a time.

Decoding follows Python's text files: the bytes in the given encoding, line ends "\r\n" and "\r"
read as "\n". Bytes not valid in the encoding stop the stream with an error naming the file, the
byte offset and the byte (errors="strict"), or are counted in bad_bytes and read as U+FFFD
(errors="replace") or dropped (errors="skip"). A paragraph longer than MAX_DOCUMENT_CHARS is cut
into pieces of that size, so that memory stays bounded whatever the input.
"""
import codecs
import glob
import os

from script_errors import BadInput

CHUNK_BYTES = 1 << 20
MAX_DOCUMENT_CHARS = 1 << 24


def expand_inputs(args):
    """Files named, matched by a glob, or under a directory (all its files, recursively, except
    hidden ones), each argument's in name order. Raises BadInput for an argument that gives none."""
    files = []
    for arg in args:
        if os.path.isfile(arg):
            found = [arg]
        elif os.path.isdir(arg):
            found = []
            for root, dirs, names in os.walk(arg):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                found += [os.path.join(root, n) for n in names if not n.startswith(".")]
            found = sorted(f for f in found if os.path.isfile(f) and os.access(f, os.R_OK))
            if not found:
                raise BadInput(f"{arg}: a directory with no readable files")
        elif glob.has_magic(arg):
            found = sorted(f for f in glob.glob(arg, recursive=True) if os.path.isfile(f))
            if not found:
                raise BadInput(f"{arg}: no files match")
        else:
            raise BadInput(f"{arg}: no such file or directory")
        files += found
    return files


def check_encoding(encoding, errors):
    try:
        if not codecs.lookup(encoding)._is_text_encoding:
            raise LookupError
    except LookupError:
        raise BadInput(f"unknown text encoding '{encoding}' (e.g. utf-8, cp1252, latin-1, utf-16)") from None
    if errors not in ERROR_HANDLERS:
        raise BadInput(f"--errors must be one of {', '.join(ERROR_HANDLERS)}, not '{errors}'")


_bad_bytes = 0  # counted by the handlers below; TextStream takes differences around each decode


def _count_then(replacement):
    def handler(error):
        global _bad_bytes
        _bad_bytes += error.end - error.start
        return replacement, error.end
    return handler


codecs.register_error("text_stream_replace", _count_then("\ufffd"))
codecs.register_error("text_stream_skip", _count_then(""))
ERROR_HANDLERS = {"strict": "strict", "replace": "text_stream_replace", "skip": "text_stream_skip"}


class TextStream:
    """documents() yields the stripped, non-empty paragraphs of the files in order; bytes_read and
    bad_bytes count the input bytes read and those replaced or skipped so far."""

    def __init__(self, files, encoding="utf-8", errors="strict", chunk_bytes=CHUNK_BYTES):
        check_encoding(encoding, errors)
        self.files, self.encoding, self.errors, self.chunk_bytes = files, encoding, errors, chunk_bytes
        self.bytes_read = self.bad_bytes = 0

    def documents(self):
        for path in self.files:
            yield from self._file_documents(path)

    def _file_documents(self, path):
        decoder = codecs.getincrementaldecoder(self.encoding)(ERROR_HANDLERS[self.errors])
        offset, held_cr, carry = 0, "", ""
        with open(path, "rb") as f:
            while True:
                data = f.read(self.chunk_bytes)
                final = not data
                text = held_cr + self._decode(decoder, data, final, path, offset)
                offset += len(data)
                self.bytes_read += len(data)
                held_cr = "\r" if text.endswith("\r") and not final else ""  # maybe the first half of "\r\n"
                text = text[:len(text) - len(held_cr)].replace("\r\n", "\n").replace("\r", "\n")
                # Splitting carry + text gives the paragraphs that splitting the whole file would.
                paragraphs = (carry + text).split("\n\n")
                carry = "" if final else paragraphs.pop()
                while len(carry) > MAX_DOCUMENT_CHARS:
                    paragraphs.append(carry[:MAX_DOCUMENT_CHARS])
                    carry = carry[MAX_DOCUMENT_CHARS:]
                yield from (p for p in map(str.strip, paragraphs) if p)
                if final:
                    return

    def _decode(self, decoder, data, final, path, offset):
        """data decoded after the bytes the decoder held back from the previous chunk (the start of a
        character); offset is where data starts in the file."""
        held = len(decoder.getstate()[0])
        before = _bad_bytes
        try:
            text = decoder.decode(data, final)
        except UnicodeDecodeError as e:  # only with errors="strict"; e.object is the held bytes, then data
            raise BadInput(f"{path}: byte 0x{e.object[e.start]:02x} at offset {offset - held + e.start} is not "
                           f"valid {self.encoding} ({e.reason}); pass the file's --encoding (e.g. cp1252 or "
                           "latin-1), or --errors replace or skip") from None
        self.bad_bytes += _bad_bytes - before
        return text
