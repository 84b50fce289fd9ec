# Timing probe for starlette 0.49.1 (CVE-2025-62727): FileResponse parsed the Range
# header with the regex (\d*)-(\d*) over the whole header, quadratic in its length.
# Written for pylivepatch's corpus (none shipped with the pair).
import time

from starlette.responses import FileResponse

header = "bytes=" + "1" * 20000
t = time.perf_counter()
try:
    FileResponse._parse_range_header(header, 100)
    res = "accepted"
except Exception as exc:
    res = type(exc).__name__
dt = time.perf_counter() - t
print(f"{'SLOW (vulnerable)' if dt > 1 else 'fast (fixed)'}: {dt:.2f}s ({res})")
