"""Model factory and the terminal-phase trainer."""
from ncalr_backend.engine.training.model import ResNet18Classifier, build_model, pick_device
from ncalr_backend.engine.training.trainer import TrainResult, train_to_tpt

__all__ = ["ResNet18Classifier", "build_model", "pick_device", "TrainResult", "train_to_tpt"]
