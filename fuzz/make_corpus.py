#!/usr/bin/env python3
"""Writes the seed corpora of fuzz/corpus/<target>/ from the test fixtures and small hand-made
inputs. Run from the repository root: python3 fuzz/make_corpus.py. The JPEG seeds need cjpeg
(Debian's libjpeg-turbo-progs); without it they are left out."""
import base64, json, os, shutil, struct, subprocess, tempfile, zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")
OUT = os.path.join(ROOT, "fuzz", "corpus")


def fixture(rel, mode="rb"):
    with open(os.path.join(DATA, rel), mode) as f:
        return f.read()


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def safetensors(tensors, metadata=None):
    """tensors: [(name, dtype, shape, bytes)] -> a safetensors file."""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(h)) + h + data


# --- safetensors: small valid files of every dtype, and the fixtures' headers without their data
put("safetensors", "all_dtypes", safetensors([
    ("a", "F32", [2, 3], struct.pack("<6f", *range(6))),
    ("b", "BF16", [4], b"\x80\x3f" * 4),
    ("c", "F16", [2, 1], b"\x00\x3c" * 2),
    ("d", "U32", [1, 2], struct.pack("<2I", 7, 8)),
    ("e", "I32", [], struct.pack("<i", -1)),
    ("f", "F32", [0, 5], b""),
], {"format": "mlx"}))
put("safetensors", "empty", safetensors([]))
for f in ["tiny-mobile/vision_model.safetensors", "tiny-original/model.safetensors"]:
    raw = fixture(f)
    n = struct.unpack("<Q", raw[:8])[0]
    put("safetensors", os.path.basename(os.path.dirname(f)) + "_header_only", raw[: 8 + n])
# A quantized linear as MLX stores it: packed U32 weight, BF16 scales and biases.
put("safetensors", "mlx_linear", safetensors([
    ("l.weight", "U32", [2, 8], bytes(64)),
    ("l.scales", "BF16", [2, 1], bytes(4)),
    ("l.biases", "BF16", [2, 1], bytes(4)),
], {"format": "mlx"}))

# --- index: the fixture's index, and small ones over its shards
index = json.loads(fixture("tiny-mobile/model.safetensors.index.json", "r"))
put("index", "tiny_mobile", json.dumps(index, indent=2))
names = list(index["weight_map"].items())
put("index", "three", json.dumps({"metadata": {"total_size": 1}, "weight_map": dict(names[:2] + names[-1:])}))
put("index", "missing_shard", json.dumps({"weight_map": {names[0][0]: "other.safetensors"}}))
put("index", "empty", "{}")

# --- config: config.json \f generation_config.json \f preprocessor_config.json
gen = json.dumps({"bos_token_id": 2, "eos_token_id": [1, 5], "do_sample": True, "top_k": 64,
                  "top_p": 0.95, "temperature": 1.0})
pre = fixture("tiny-mobile/preprocessor_config.json", "r")
for model in ["tiny-mobile", "tiny-original"]:
    cfg = fixture(model + "/config.json", "r")
    put("config", model, cfg + "\f" + gen + "\f" + pre)
    put("config", model + "_alone", cfg)
    put("tensor_table", model, cfg)
put("config", "eos_int", fixture("tiny-mobile/config.json", "r") + "\f" + json.dumps({"eos_token_id": 1}) + "\f{}")

# --- token_map: the fixture's map, and an identity over the compact rows
raw = fixture("tiny-mobile/language_model.safetensors")
n = struct.unpack("<Q", raw[:8])[0]
h = json.loads(raw[8 : 8 + n])
b, e = h["language_model.model.embed_tokens.token_map"]["data_offsets"]
put("token_map", "fixture", raw[8 + n + b : 8 + n + e])
put("token_map", "identity", struct.pack("<326i", *range(326)))

# --- tokenizer.model: the fixture's (a tiny model, not Gemma's)
put("tokenizer_model", "tiny", fixture("tiny-mobile/tokenizer.model"))

# --- tokenizer.json: a small BPE file in Hugging Face's layout, with both merge spellings
def tokenizer_json(string_merges):
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    vocab = {s: i for i, s in enumerate(specials)}
    for byte in range(256):
        vocab["<0x%02X>" % byte] = len(vocab)
    for p in ["\u2581", "a", "b", "c", "ab", "ca", "\u2581\u2581", "\u2581c"]:
        vocab[p] = len(vocab)
    merges = [("\u2581", "\u2581"), ("c", "a"), ("a", "b"), ("\u2581", "c")]
    added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, s in enumerate(specials)]
    added.append({"id": len(vocab), "content": "<image_soft_token>", "special": True})
    return json.dumps({
        "version": "1.0", "added_tokens": added,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
        "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": False},
        "post_processor": None, "decoder": None,
        "model": {"type": "BPE", "unk_token": "<unk>", "byte_fallback": True, "fuse_unk": True, "vocab": vocab,
                  "merges": [l + " " + r for l, r in merges] if string_merges else [[l, r] for l, r in merges]}},
        ensure_ascii=False)
put("tokenizer_json", "string_merges", tokenizer_json(True))
put("tokenizer_json", "pair_merges", tokenizer_json(False))

# --- image: two bytes of output size, then a small image of each format stb reads
def png(w, h, color_type, pixels):
    def chunk(t, body):
        return struct.pack(">I", len(body)) + t + body + struct.pack(">I", zlib.crc32(t + body))
    ch = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    rows = b"".join(b"\x00" + pixels[y * w * ch : (y + 1) * w * ch] for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
def pattern(n):
    return bytes((i * 37 + 11) % 256 for i in range(n))
size = b"\x07\x05"
put("image", "rgb.png", size + png(6, 4, 2, pattern(6 * 4 * 3)))
put("image", "grey.png", size + png(3, 5, 0, pattern(15)))
put("image", "rgba.png", size + png(4, 4, 6, pattern(64)))
put("image", "grey_alpha.png", size + png(2, 3, 4, pattern(12)))
def bmp(w, h, pixels):
    stride = (w * 3 + 3) & ~3
    rows = b"".join(pixels[y * w * 3 : (y + 1) * w * 3] + bytes(stride - w * 3) for y in range(h))
    return (b"BM" + struct.pack("<IHHI", 54 + len(rows), 0, 0, 54)
            + struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, len(rows), 2835, 2835, 0, 0) + rows)
put("image", "rgb.bmp", size + bmp(5, 3, pattern(45)))
put("image", "rgb.ppm", size + b"P6\n4 3\n255\n" + pattern(36))
put("image", "grey.pgm", size + b"P5\n3 3\n255\n" + pattern(9))
put("image", "rgb.tga", size + struct.pack("<BBBHHBHHHHBB", 0, 0, 2, 0, 0, 0, 0, 0, 3, 2, 24, 0) + pattern(18))
# GIF 2x2, 4 colours, LZW minimum code size 2: clear, 0, 1, 2, 3, end.
put("image", "tiny.gif", size + b"GIF89a" + struct.pack("<HHBBB", 2, 2, 0x81, 0, 0) + pattern(12)
    + b"\x2c" + struct.pack("<HHHHB", 0, 0, 2, 2, 0) + b"\x02\x03\x44\x34\x05\x00\x3b")
if shutil.which("cjpeg"):
    with tempfile.TemporaryDirectory() as tmp:
        ppm = os.path.join(tmp, "in.ppm")
        with open(ppm, "wb") as f:
            f.write(b"P6\n16 8\n255\n" + pattern(16 * 8 * 3))
        for name, args in [("baseline.jpg", []), ("progressive.jpg", ["-progressive"]),
                           ("grey.jpg", ["-grayscale"])]:
            jpg = subprocess.run(["cjpeg", "-quality", "75"] + args + [ppm], check=True, capture_output=True).stdout
            put("image", name, size + jpg)

# --- chat: ROLE \t N_IMAGES TEXT per line (\x01 is a newline in the text)
put("chat", "one_turn", "user\t0Hello there\n")
put("chat", "system", "system\t0Be brief.\nuser\t0Hi\x01how are you?\n")
put("chat", "turns", "user\t1What is this?\nassistant\t0A cat.\nuser\t0And <start_of_turn>now?\n")
put("chat", "model_role", "user\t0a\nmodel\t0b\nuser\t2c\n")

# --- openai_request: a byte (even: chat, odd: completions), then the body
png_b64 = base64.b64encode(png(2, 2, 2, pattern(12))).decode()
chat_bodies = {
    "chat_simple": {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4},
    "chat_full": {"model": "tiny", "messages": [{"role": "system", "content": "Be brief."},
                                                {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                                                {"role": "assistant", "content": "Hello!"},
                                                {"role": "user", "content": "More"}],
                  "temperature": 0.7, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "seed": 42, "stop": ["\n", "END"],
                  "max_completion_tokens": 16, "repetition_penalty": 1.1, "frequency_penalty": 0,
                  "presence_penalty": 0, "n": 1, "stream": True, "stream_options": {"include_usage": True},
                  "ignore_eos": False, "user": "x"},
    "chat_image": {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + png_b64}},
        {"type": "text", "text": "What is it?"}]}]},
}
for name, body in chat_bodies.items():
    put("openai_request", name, b"\x00" + json.dumps(body).encode())
completion_bodies = {
    "completion_text": {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 8, "stop": "."},
    "completion_ids": {"prompt": [2, 10, 20, 30], "temperature": 0, "seed": 1},
    "completion_list": {"prompt": ["one string"], "stream": False, "echo": False},
}
for name, body in completion_bodies.items():
    put("openai_request", name, b"\x01" + json.dumps(body).encode())

# --- http: the bytes of one connection
def post(path, body, extra=""):
    b = json.dumps(body)
    return (f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(b.encode())}\r\n\r\n{b}")
put("http", "health", "GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
put("http", "models", "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/models/tiny HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
put("http", "page", "GET / HTTP/1.1\r\n\r\n")
put("http", "chat", post("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}))
put("http", "chat_stream", post("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                                                         "max_tokens": 3, "stream": True,
                                                         "stream_options": {"include_usage": True}}))
put("http", "completion", post("/v1/completions", {"prompt": "ab", "max_tokens": 2, "temperature": 0},
                               "Authorization: Bearer k\r\n"))
body = json.dumps({"prompt": [2, 3], "max_tokens": 1})
put("http", "chunked", "POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    + "%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
put("http", "errors", "GET /v1/completions HTTP/1.1\r\n\r\nDELETE /nope HTTP/1.1\r\n\r\nPOST /v1/chat/completions HTTP/1.1\r\nContent-Length: 3\r\n\r\n{x}")
