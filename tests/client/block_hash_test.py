"""kvtier.block_hash (pure Python) reproduces the C++ block keys: docs/block_hash.md's test vectors
(tests/tiering/block_key_vectors.txt, produced and checked by tests/tiering/block_key_test.cc)."""
import importlib.util
import os
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
# Loaded on its own: block_hash needs nothing but the standard library (no gRPC stubs).
_spec = importlib.util.spec_from_file_location(
    "kvtier_block_hash", os.path.join(ROOT, "client", "python", "kvtier", "block_hash.py"))
bh = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bh)


def vectors():
    with open(os.path.join(ROOT, "tests", "tiering", "block_key_vectors.txt")) as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                layout, salt, parent, tokens, key = line.split()
                yield (int(layout), b"" if salt == "-" else bytes.fromhex(salt), bytes.fromhex(parent),
                       [int(t) for t in tokens.split(",")], bytes.fromhex(key))


class BlockHashTest(unittest.TestCase):
    def test_vectors(self):
        n = 0
        lengths = set()
        for layout, salt, parent, tokens, key in vectors():
            self.assertEqual(bh.chain_key(parent, layout, salt, tokens).hex(), key.hex())
            lengths.add(37 + len(salt) + 4 * len(tokens))
            n += 1
        self.assertGreaterEqual(n, 8)
        # The vectors exercise every XXH3-128 path a key input can take.
        self.assertTrue(any(17 <= n <= 128 for n in lengths))
        self.assertTrue(any(128 < n <= 240 for n in lengths))
        self.assertTrue(any(240 < n <= 1024 for n in lengths))
        self.assertTrue(any(n > 1024 for n in lengths))

    def test_prefix_keys_chain(self):
        tokens = list(range(40))
        keys = bh.prefix_keys(7, "tenant-a", 16, tokens)
        self.assertEqual(len(keys), 2)  # the partial tail has no key
        self.assertEqual(keys[0], bh.chain_key(b"", 7, b"tenant-a", tokens[:16]))
        self.assertEqual(keys[1], bh.chain_key(keys[0], 7, "tenant-a", tokens[16:32]))
        self.assertNotEqual(keys[0], bh.chain_key(b"", 7, "tenant-b", tokens[:16]))

    def test_bad_input(self):
        with self.assertRaises(ValueError):
            bh.chain_key(b"short", 1, b"", [1] * 16)
        with self.assertRaises(ValueError):
            bh.chain_key(b"", -1, b"", [1] * 16)
        with self.assertRaises(ValueError):
            bh.xxh3_128(b"0123456789")


if __name__ == "__main__":
    unittest.main()
