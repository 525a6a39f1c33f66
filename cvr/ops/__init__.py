"""Operations: model registry, nightly retraining with a promotion gate, batch scoring, run locks and state."""
