"""Model and dataset cards for the Hugging Face Hub, rendered from templates (``hqrs.hub_cards``)."""
