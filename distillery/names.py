"""The names params.yaml uses for teacher architectures and ensemble rules, in one place and without importing
torch: the params schema (project/config.py) reads them as well as the code that builds what they name."""

BUILT_IN_TEACHERS = ("wide_cnn", "small_resnet", "resnet18")  # distillery.models.TEACHER_ARCHS builds them
TORCHVISION = "torchvision:"  # an architecture by torchvision builder name, e.g. torchvision:resnet50
COMBINE_RULES = ("mean_probabilities", "mean_logits", "fitted_weights")  # distillery.combine joins by them
