# Timing probe for black 24.3.0 (CVE-2024-21503): a docstring line of many tabs made
# FIRST_NON_WHITESPACE_RE backtrack (cubic in the number of tabs).
import time

from black.strings import lines_with_leading_tabs_expanded

n = 1200
t = time.perf_counter()
lines_with_leading_tabs_expanded("\t" * n)
dt = time.perf_counter() - t
print(f"{'SLOW (vulnerable)' if dt > 1 else 'fast (fixed)'}: {dt:.2f}s for {n} tabs")
