// SPDX-License-Identifier: MIT
// Unit tests for IPC framing: encoding, incremental decoding under any chunking, refusal of malformed streams.

import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { FrameDecoder, encodeFrame, encodeData, encodeJson, MAX_FRAME, KIND, type Frame, type FrameKind, framesOrDrop } from './framing.ts';
import { split } from '../../test/support/split.ts';


function decodeAll(chunks: readonly Buffer[]): Frame[] {
  const d = new FrameDecoder();
  const frames: Frame[] = [];
  // Payloads are kept uncopied: a frame returned earlier must stay intact while later chunks arrive.
  for (const c of chunks) frames.push(...d.push(c));
  return frames;
}

function header(len: number, kind: number): Buffer {
  const h = Buffer.alloc(5);
  h.writeUInt32BE(len, 0);
  h[4] = kind;
  return h;
}

describe('encodeFrame', () => {
  test('writes a 4-byte big-endian length, the kind byte and the payload', () => {
    const f = encodeFrame('data', Buffer.from('abc'));
    assert.deepEqual([...f], [0, 0, 0, 3, KIND.data, 0x61, 0x62, 0x63]);
  });

  test('encodes an empty frame as the 5-byte header alone', () => {
    assert.deepEqual([...encodeFrame('end')], [0, 0, 0, 0, KIND.end]);
  });

  test('refuses a payload over 1 MiB', () => {
    assert.throws(() => encodeFrame('data', Buffer.alloc(MAX_FRAME + 1)), /frame payload too large/);
  });

  test('encodes a JSON value as one json frame', () => {
    const [f] = decodeAll([encodeJson({ ok: true, qid: 'X' })]);
    assert.equal(f!.kind, 'json');
    assert.deepEqual(JSON.parse(f!.payload.toString('utf8')), { ok: true, qid: 'X' });
  });
});

describe('encodeData', () => {
  test('splits data over 1 MiB into frames of at most 1 MiB', () => {
    const data = Buffer.alloc(MAX_FRAME * 2 + 5, 7);
    const frames = encodeData(data);
    assert.equal(frames.length, 3);
    const decoded = decodeAll(frames);
    assert.deepEqual(decoded.map((f) => f.payload.length), [MAX_FRAME, MAX_FRAME, 5]);
    assert.ok(Buffer.concat(decoded.map((f) => f.payload)).equals(data));
  });

  test('produces no frame for empty data', () => {
    assert.deepEqual(encodeData(Buffer.alloc(0)), []);
  });
});

describe('FrameDecoder', () => {
  test('returns nothing until a frame is complete', () => {
    const d = new FrameDecoder();
    const f = encodeFrame('json', Buffer.from('{}'));
    assert.deepEqual(d.push(f.subarray(0, 4)), []);
    assert.deepEqual(d.push(f.subarray(4, 6)), []);
    const out = d.push(f.subarray(6));
    assert.equal(out.length, 1);
    assert.equal(out[0]!.payload.toString(), '{}');
  });

  test('returns every frame complete in one chunk', () => {
    const d = new FrameDecoder();
    const out = d.push(Buffer.concat([encodeFrame('data', Buffer.from('a')), encodeFrame('end'), encodeFrame('abort')]));
    assert.deepEqual(out.map((f) => f.kind), ['data', 'end', 'abort']);
  });

  test('accepts a frame of exactly 1 MiB', () => {
    const out = decodeAll([encodeFrame('data', Buffer.alloc(MAX_FRAME, 1))]);
    assert.equal(out[0]!.payload.length, MAX_FRAME);
  });

  test('throws on a length over 1 MiB as soon as the header arrives', () => {
    const d = new FrameDecoder();
    assert.throws(() => d.push(header(MAX_FRAME + 1, KIND.data)), /malformed frame/);
  });

  test('throws on a huge length without waiting for the payload', () => {
    assert.throws(() => new FrameDecoder().push(header(0xffffffff, KIND.json)), /malformed frame/);
  });

  for (const kind of [0, 5, 255]) {
    test(`throws on frame kind ${kind}`, () => {
      assert.throws(() => new FrameDecoder().push(header(0, kind)), /malformed frame/);
    });
  }

  test('throws on a bad frame that follows a good one in the same chunk', () => {
    const d = new FrameDecoder();
    assert.throws(() => d.push(Buffer.concat([encodeFrame('end'), header(1, 9), Buffer.from('x')])), /malformed frame/);
  });
});

describe('framing properties', () => {
  const kind = fc.constantFrom<FrameKind>('json', 'data', 'end', 'abort');
  const frame = fc.record({ kind, payload: fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a)) });
  // Frames, their bytes on the wire, and where the wire is cut into reads.
  const framesOnWire = fc.array(frame, { maxLength: 20 }).chain((frames) => {
    const wire = Buffer.concat(frames.map((f) => encodeFrame(f.kind, f.payload)));
    return fc.tuple(fc.constant(frames), fc.constant(wire), fc.array(fc.integer({ min: 0, max: wire.length }), { maxLength: 30 }));
  });

  test('any sequence of frames round-trips under any chunking', () => {
    fc.assert(
      fc.property(
        framesOnWire,
        ([frames, wire, cuts]) => {
          const out = decodeAll(split(wire, cuts));
          assert.equal(out.length, frames.length);
          out.forEach((f, i) => {
            assert.equal(f.kind, frames[i]!.kind);
            assert.ok(f.payload.equals(frames[i]!.payload));
          });
        },
      ),
      { numRuns: 300 },
    );
  });

  test('any data round-trips through encodeData under any chunking', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 2000 }), fc.array(fc.nat(), { maxLength: 10 }), (a, cuts) => {
        const data = Buffer.from(a);
        const wire = Buffer.concat(encodeData(data));
        const out = decodeAll(split(wire, cuts.map((c) => c % (wire.length + 1))));
        assert.ok(out.every((f) => f.kind === 'data'));
        assert.ok(Buffer.concat(out.map((f) => f.payload)).equals(data));
      }),
      { numRuns: 200 },
    );
  });

  test('streaming decoder: data frames arrive in pieces whose bytes add up; every other frame whole and in order', () => {
    fc.assert(
      fc.property(
        framesOnWire,
        ([frames, wire, cuts]) => {
          const d = new FrameDecoder({ streamData: true });
          const out = split(wire, cuts).flatMap((c) => d.push(c));
          // Merge consecutive data pieces back into frames: pieces of one frame are contiguous, but two data
          // frames in a row also merge, so compare against the input merged the same way.
          const merge = (fs: readonly { kind: FrameKind; payload: Buffer }[]) => {
            const m: { kind: FrameKind; payload: Buffer }[] = [];
            for (const f of fs) {
              const last = m[m.length - 1];
              if (f.kind === 'data' && last?.kind === 'data') last.payload = Buffer.concat([last.payload, f.payload]);
              else m.push({ kind: f.kind, payload: f.payload });
            }
            return m.filter((f) => f.kind !== 'data' || f.payload.length > 0);
          };
          const got = merge(out);
          const want = merge(frames);
          assert.equal(got.length, want.length);
          got.forEach((f, i) => {
            assert.equal(f.kind, want[i]!.kind);
            assert.ok(f.payload.equals(want[i]!.payload));
          });
        },
      ),
      { numRuns: 300 },
    );
  });

  test('streaming decoder: a 1 MiB data frame cut in 64 KiB reads comes out without waiting for its end', () => {
    const d = new FrameDecoder({ streamData: true });
    const wire = encodeFrame('data', Buffer.alloc(MAX_FRAME, 7));
    const first = d.push(wire.subarray(0, 65536));
    assert.equal(first.length, 1);
    assert.equal(first[0]!.payload.length, 65536 - 5);
    let total = first[0]!.payload.length;
    for (let i = 65536; i < wire.length; i += 65536) for (const f of d.push(wire.subarray(i, i + 65536))) total += f.payload.length;
    assert.equal(total, MAX_FRAME);
    assert.deepEqual(d.push(encodeFrame('end')).map((f) => f.kind), ['end']);
  });

  test('arbitrary bytes either decode or throw the malformed-frame error, never anything else', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), (a) => {
        try {
          new FrameDecoder().push(Buffer.from(a));
        } catch (e) {
          assert.match((e as Error).message, /^ipc: malformed frame$/);
        }
      }),
      { numRuns: 300 },
    );
  });
});

test('framesOrDrop: frames of a good stream; a malformed one destroys the socket and gives null', () => {
  let destroyed = 0;
  const sock = { destroy: () => void destroyed++ };
  const good = framesOrDrop(new FrameDecoder(), encodeJson({ a: 1 }), sock);
  assert.equal(good?.length, 1);
  assert.equal(destroyed, 0);
  assert.equal(framesOrDrop(new FrameDecoder(), Buffer.from([0, 0, 0, 1, 99, 0]), sock), null);
  assert.equal(destroyed, 1);
});
