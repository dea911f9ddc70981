# MLX affine quantization (mlx/ops.cpp affine_quantize, float32 input, bits 4, group 64),
# replayed op by op in float32 with the standard library only.
import struct
def f32(x): return struct.unpack('<f', struct.pack('<f', x))[0]
def bits(x): return struct.unpack('<I', struct.pack('<f', x))[0]
EPS = f32(1e-7); NB = 15.0
def quant_group(w):
    wmax, wmin = max(w), min(w)
    mask = abs(wmin) > abs(wmax)
    scale = max(f32(f32(wmax - wmin) / NB), EPS)
    scale = scale if mask else -scale
    edge = wmin if mask else wmax
    q0 = float(round(f32(edge / scale)))  # round half to even, as mlx round
    if q0 != 0: scale = f32(edge / q0)
    bias = 0.0 if q0 == 0 else edge
    q = [int(min(max(round(f32(f32(x - bias) / scale)), 0), 15)) for x in w]
    return q, scale, bias
def lcg(seed):
    while True:
        seed = (seed * 1103515245 + 12345) % 2**31
        yield seed
g = lcg(7)
def vals(lo, hi):  # integers in [lo, hi] times 2^-12: exact in f32
    return [f32((lo + next(g) % (hi - lo + 1)) / 4096.0) for _ in range(64)]
groups = [
  ('mixed, |min| > |max|', vals(-9000, 5000)),
  ('mixed, |max| > |min|', vals(-3000, 7000)),
  ('all negative', vals(-8000, -100)),
  ('all positive', vals(300, 6000)),
  ('constant', [0.75] * 64),
  ('constant negative', [-1.25] * 64),
  ('zero', [0.0] * 64),
  ('tiny range near 0', vals(-2, 1)),
]
for name, w in groups:
    q, s, b = quant_group(w)
    words = []
    for i in range(0, 64, 8):
        v = 0
        for k in range(8): v |= q[i + k] << (4 * k)
        words.append(v)
    print('// ' + name)
    print('{{' + ', '.join('%d' % round(x * 4096) for x in w) + '},')
    print(' {' + ', '.join('0x%08x' % x for x in words) + '},')
    print(' 0x%08x, 0x%08x},  // scale %.9g, bias %.9g' % (bits(s), bits(b), s, b))
