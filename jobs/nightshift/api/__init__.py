"""The lookup API: FastAPI service answering reads of committed predictions (`nightshift api`)."""
