"""Vocabulary files ("vocab.bin"): the one writer and reader on the Python side (tokenizer/tokenizer.h
is the C++ reader), and the byte strings of a Hugging Face tokenizer's ids.

Format (little-endian): a 20-byte header, then one entry per id in id order.
    char[8] magic "MIXLNVOC" | uint32 version 1 | uint32 vocab_size (1 .. 2^24) | int32 eot_id (-1: none)
    each entry: uint32 byte length n, then the n bytes the id stands for
The file ends right after the last entry. Special tokens store their names (e.g. b"</s>").
"""
import json
import os
import struct

from script_errors import BadInput

MAGIC = b"MIXLNVOC"
VERSION = 1
HEADER = struct.Struct("<8sIIi")
LENGTH = struct.Struct("<I")
MAX_VOCAB = 1 << 24

# Names of end-of-text tokens, in the order they are looked for: ours and GPT-2's, then T5's (and
# other SentencePiece models') end-of-sequence.
EOT_NAMES = ("<|endoftext|>", "</s>")


def write_vocab(path, pieces, eot_id):
    """Writes pieces (a list of bytes, one per id) and the end-of-text id (-1 if none)."""
    if not 0 < len(pieces) <= MAX_VOCAB or not -1 <= eot_id < len(pieces):
        raise BadInput(f"{path}: need 1 .. 2^24 pieces and an eot_id in [-1, {len(pieces)})")
    tmp = str(path) + ".tmp"
    with open(tmp, "wb") as f:
        f.write(HEADER.pack(MAGIC, VERSION, len(pieces), eot_id))
        for piece in pieces:
            f.write(LENGTH.pack(len(piece)) + piece)
    os.replace(tmp, path)


def read_vocab(path):
    """Returns (pieces, eot_id); raises BadInput (a ValueError) on a malformed file."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < HEADER.size:
        raise BadInput(f"{path}: truncated header")
    magic, version, size, eot_id = HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION or not 0 < size <= MAX_VOCAB or not -1 <= eot_id < size:
        raise BadInput(f"{path}: not a version-1 mixln vocabulary")
    pieces, at = [], HEADER.size
    for i in range(size):
        if at + LENGTH.size > len(data):
            raise BadInput(f"{path}: truncated at entry {i}")
        (n,) = LENGTH.unpack_from(data, at)
        at += LENGTH.size
        if at + n > len(data):
            raise BadInput(f"{path}: entry {i} runs past the end of the file")
        pieces.append(data[at:at + n])
        at += n
    if at != len(data):
        raise BadInput(f"{path}: stray bytes after the last entry")
    return pieces, eot_id


def byte_vocab():
    """The byte tokenizer: id b stands for byte b; no end-of-text token."""
    return [bytes([b]) for b in range(256)], -1


def _byte_level_chars():
    """GPT-2's byte-level BPE writes each byte as one printable character, so that tokens are
    strings: the printable bytes other than space (! .. ~, ¡ .. ¬, ® .. ÿ) stand for themselves,
    and the other 68 bytes, in order, become the characters U+0100, U+0101, .... Returns the
    inverse: character -> byte."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    inverse = {chr(b): b for b in printable}
    inverse.update({chr(0x100 + i): b for i, b in enumerate(others)})
    return inverse


def _decoder_types(decoder):
    """The type names in a tokenizer.json "decoder" entry, looking inside Sequence decoders."""
    if not decoder:
        return set()
    return {decoder["type"]}.union(*(_decoder_types(d) for d in decoder.get("decoders", [])))


def tokenizer_vocab(tokenizer, size=None):
    """(pieces, eot_id) for the first `size` ids (default all) of a tokenizers.Tokenizer.

    A token's string is not its text: byte-level BPE spells bytes as the characters above, and
    SentencePiece writes a space as "▁" (U+2581). Special tokens are kept as their names. The
    end-of-text id is the first of EOT_NAMES in the vocabulary (-1 if none)."""
    size = size or tokenizer.get_vocab_size()
    types = _decoder_types(json.loads(tokenizer.to_str()).get("decoder"))
    if "ByteLevel" in types:
        chars = _byte_level_chars()
        to_bytes = lambda token: bytes(chars[c] for c in token)  # noqa: E731
    elif "Metaspace" in types:
        to_bytes = lambda token: token.replace("\u2581", " ").encode("utf-8")  # noqa: E731
    else:
        raise BadInput(f"cannot recover the bytes of tokens for decoder types {sorted(types)} "
                         "(supported: ByteLevel, Metaspace)")
    special = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
    pieces = []
    for i in range(size):
        token = tokenizer.id_to_token(i)
        if token is None:
            raise BadInput(f"the tokenizer has no token with id {i}")
        pieces.append(token.encode("utf-8") if i in special else to_bytes(token))
    eot_ids = [tokenizer.token_to_id(name) for name in EOT_NAMES if tokenizer.token_to_id(name) is not None]
    return pieces, (eot_ids[0] if eot_ids else -1)
