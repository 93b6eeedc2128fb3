"""One LightningModule per kind of task."""
