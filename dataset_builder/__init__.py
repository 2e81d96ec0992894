"""MpGI generation engine and the HQRS-IT ``datasets`` builder (``hqrs.dataset_builder``)."""
