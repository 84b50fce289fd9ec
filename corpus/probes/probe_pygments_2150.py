# Timing probe for Pygments 2.15.0 (CVE-2022-40896): SqlJinjaLexer.analyse_text searched
# for a whole `{% macro %} ... {% endmacro %}` block with `\s+.*\s+` under re.S, which
# backtracks cubically on a macro header followed by whitespace lines.
import time

from pygments.lexers.templates import SqlJinjaLexer

n = 800
t = time.perf_counter()
SqlJinjaLexer.analyse_text("{% macro a() %}" + " \n" * n)
dt = time.perf_counter() - t
print(f"{'SLOW (vulnerable)' if dt > 1 else 'fast (fixed)'}: {dt:.2f}s for {n} lines")
