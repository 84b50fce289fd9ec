# Timing probe for pydantic 1.10.13 (CVE-2024-3772): pretty_email_regex backtracks
# quadratically on a long run of spaces; 1.10.13 refuses values longer than 2048 first.
import time

from pydantic.errors import PydanticValueError
from pydantic.networks import validate_email

n = 60000
t = time.perf_counter()
try:
    validate_email("a" + " " * n + "<")
except (PydanticValueError, ValueError):
    pass
dt = time.perf_counter() - t
print(f"{'SLOW (vulnerable)' if dt > 1 else 'fast (fixed)'}: {dt:.2f}s for {n} spaces")
