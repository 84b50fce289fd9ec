# Timing probe for mistune 2.0.3 (CVE-2022-34749): the inline parser's emphasis regex
# backtracked exponentially on "**" followed by escaped backslashes and no closing "**".
import time

import mistune

text = "**" + "\\\\" * 15 + "a"
t = time.perf_counter()
mistune.html(text)
dt = time.perf_counter() - t
print(f"{'SLOW (vulnerable)' if dt > 1 else 'fast (fixed)'}: {dt:.2f}s for 15 escaped backslashes")
