# Objects made before the payload (starlette 0.47.2, CVE-2025-54121): an UploadFile made
# before the payload (a request being uploaded at that moment) has no _max_mem_size; the
# fixed write() reads it. It must go on writing, and roll to disk in a worker thread as
# 0.47.2 does once the spooled file's max_size is passed. Run with LPZ=the payload.
import asyncio
import os
import tempfile
import threading

import pylivepatch
from starlette.datastructures import UploadFile

spooled = tempfile.SpooledTemporaryFile(max_size=10)
upload = UploadFile(spooled)  # made before the payload
threads = []
original = spooled.write


def write(data):
    threads.append(threading.current_thread() is threading.main_thread())
    return original(data)


spooled.write = write
e = pylivepatch.engine()
name = e.load(open(os.environ["LPZ"], "rb").read()).name
asyncio.run(upload.write(b"x" * 5))  # stays in memory: written in this thread
asyncio.run(upload.write(b"y" * 20))  # would pass max_size: written in a worker thread
ok = upload._max_mem_size == 10 and threads == [True, False] and "_max_mem_size" not in vars(upload)
e.revert(name)
ok = ok and not hasattr(upload, "_max_mem_size")
print(f"writes in the event loop's thread: {threads}")
print(("ok" if ok else "FAILED") + ": an UploadFile made before the payload")
