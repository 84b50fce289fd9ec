# Timing probe for python-multipart 0.0.7 (CVE-2024-24762): parse_options_header ran a
# regex that backtracks exponentially on a quoted value of backslashes without its
# closing quote (a Content-Type header an attacker sends).
import time

from multipart.multipart import parse_options_header

value = 'application/x-www-form-urlencoded; !="' + "\\" * 36
t = time.perf_counter()
parse_options_header(value)
dt = time.perf_counter() - t
print(f"{'SLOW (vulnerable)' if dt > 1 else 'fast (fixed)'}: {dt:.2f}s for 36 backslashes")
