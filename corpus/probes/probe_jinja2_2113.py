# Timing probe for jinja2 2.11.3 (CVE-2020-28493): urlize's _punctuation_re backtracked
# quadratically on a word of many trailing-punctuation characters that does not end in one.
import time

from jinja2.utils import urlize

n = 15000
t = time.perf_counter()
urlize("a" + "." * n + "!")
dt = time.perf_counter() - t
print(f"{'SLOW (vulnerable)' if dt > 1 else 'fast (fixed)'}: {dt:.2f}s for {n} dots")
