"""Patient master index (EMPI), canonical records and deduplication."""
