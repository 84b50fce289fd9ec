# certifi 2024.7.4 (CVE-2024-39689): the bundle no longer trusts GLOBALTRUST's roots.
# VULNERABLE while the bundle the process would hand out still holds them.
import certifi

bundle = certifi.contents()
if "GLOBALTRUST" in bundle:
    print("VULNERABLE: the CA bundle trusts GLOBALTRUST")
else:
    print("FIXED: no GLOBALTRUST root in the CA bundle")
