"""``flowerbed bench``: measures this deployment's ingest (and, later, page) speed."""
