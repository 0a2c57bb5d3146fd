#!/usr/bin/env python3
"""Plants one bug: replaces OLD by NEW in FILE, which must hold OLD exactly once (so a planted bug
cannot silently stop applying when the real source changes). usage: plant_bug.py FILE OLD NEW"""
import sys

path, old, new = sys.argv[1:4]
with open(path) as f:
    text = f.read()
count = text.count(old)
if count != 1:
    sys.exit("plant_bug.py: %s holds %r %d times, not once" % (path, old, count))
with open(path, "w") as f:
    f.write(text.replace(old, new))
