"""Rebuilds ``kjv_text8.txt.xz``, the bundled default corpus.

Source: the King James Version of the Bible (1611, public domain), as shipped by
Debian's ``bible-kjv-text`` package (text by the Bible Retrieval System, Chip Chapin;
packaging GPL-2+, the text itself is out of copyright). Reproduce with::

  apt-get install bible-kjv
  bible "gen1:1-rev22:21" > kjv_raw.txt
  python -m tcsm_jax.data.bundled.make_kjv kjv_raw.txt

Book/chapter headings and verse numbers are dropped, then the text8 cleaning rule
(``tcsm_jax.data.text8.clean_text``) maps the rest to 27 symbols.
"""

import lzma
import os
import re
import sys

from tcsm_jax import fs
from tcsm_jax.data import text8

_HEADING = re.compile(r"^\S.*\s\d+$")        # "Genesis 1", "1 Kings 3"
_VERSE_NO = re.compile(r"^\s+\d+\s")           # "  12 And ..."


def strip_markup(raw: str) -> str:
  lines = []
  for line in raw.splitlines():
    if not line.strip() or _HEADING.match(line):
      continue
    lines.append(_VERSE_NO.sub("", line))
  return " ".join(lines)


def main(argv):
  raw = fs.read_text(argv[1], encoding="latin-1")
  clean = text8.clean_text(strip_markup(raw))
  out = os.path.join(os.path.dirname(__file__), "kjv_text8.txt.xz")
  data = lzma.compress(clean.encode("ascii"), preset=9)
  fs.write_bytes_atomic(out, data)
  print(f"{len(clean):,} characters -> {out} ({len(data):,} bytes)")


if __name__ == "__main__":
  main(sys.argv)
