"""Runs the real WAL-E 1.1.1 with the test's local services, without editing
WAL-E: run it with the virtualenv's python, with WAL-E's own arguments.

WAL-E reads the same environment variables as our wal-e, except that its
Azure client ignores WALE_WABS_ENDPOINT: it hard-codes
BlockBlobService(..., protocol='https') for <account>.blob.core.windows.net
(wabs/calling_format.py, three times in wabs/wabs_util.py). When
WALE_WABS_ENDPOINT is set (Azurite: http://127.0.0.1:PORT/devstoreaccount1),
every BlockBlobService is pointed there instead. s3:// (WALE_S3_ENDPOINT),
swift:// and file:// need nothing.

Installed next to WAL-E by scripts/install-wal-e.sh.
"""
import os
import sys
from urllib.parse import urlsplit

endpoint = os.environ.get('WALE_WABS_ENDPOINT')
if endpoint:
    from azure.storage.blob.blockblobservice import BlockBlobService

    original_init = BlockBlobService.__init__
    scheme = urlsplit(endpoint).scheme or 'http'

    def init(self, *args, **kwargs):
        kwargs['protocol'] = scheme
        kwargs['custom_domain'] = endpoint.rstrip('/')
        original_init(self, *args, **kwargs)

    BlockBlobService.__init__ = init

from wal_e.cmd import main  # noqa: E402

sys.exit(main())
