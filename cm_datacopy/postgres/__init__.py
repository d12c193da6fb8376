"""The PostgreSQL side: target tables, the COPY encoder, the ledger, the source lock, the attempt fence."""
