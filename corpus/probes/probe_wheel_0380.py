# Timing probe for wheel 0.38.0 (CVE-2022-40898): WHEEL_INFO_RE's lazy `.+?` groups
# backtracked polynomially on a crafted file name; 0.38.0 excludes `-` from them.
import time

from wheel.wheelfile import WheelError, WheelFile

n = 90
t = time.perf_counter()
try:
    WheelFile("a-" * n + ".whl!")
except (WheelError, OSError):
    pass
dt = time.perf_counter() - t
print(f"{'SLOW (vulnerable)' if dt > 1 else 'fast (fixed)'}: {dt:.2f}s for {n} dashes")
