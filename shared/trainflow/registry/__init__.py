"""The one place that talks to MLflow: tracking, registration gates, the champion, model versions."""
