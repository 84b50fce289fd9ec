"""The payload file format: manifest, archive, fingerprints and the authoring API.

Pure: nothing here changes a running program.
"""
