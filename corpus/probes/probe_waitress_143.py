# Timing probe for waitress 1.4.3 (GHSA-73m2-3pwg-5fgc): an invalid header value made
# the header regex (built from rfc7230's FIELD_CONTENT, imported by waitress.parser)
# backtrack exponentially. Goes through the parser, which holds its own HEADER_FIELD.
import time

from waitress.adjustments import Adjustments
from waitress.parser import HTTPRequestParser, ParsingError

n = 31
data = b"GET /foobar HTTP/1.1\r\nfoo: bar\r\nfoo: " + b"x" * n + b"\x10\r\n"
parser = HTTPRequestParser(Adjustments())
t = time.perf_counter()
try:
    parser.parse_header(data)
except ParsingError:
    pass
dt = time.perf_counter() - t
print(f"{'SLOW (vulnerable)' if dt > 1 else 'fast (fixed)'}: {dt:.2f}s for {n} characters")
