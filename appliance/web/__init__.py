"""The box's one HTTPS server (admin API, DICOMweb, later the consumer UI and the viewer)."""
