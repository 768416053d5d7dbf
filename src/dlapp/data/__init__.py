"""An app's data: workspace tarballs, storage URLs (``locations``), stage-in and stage-out
(``staging``, ``commit``), the node-local input cache, checksums and progress lines."""
