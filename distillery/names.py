"""The names params.yaml uses for architectures and ensemble rules, in one place and without importing torch: the
params schema (project/config.py) reads them as well as the code that builds what they name."""

BUILT_IN_TEACHERS = ("wide_cnn", "small_resnet", "resnet18")  # distillery.models.TEACHER_ARCHS builds them
TORCHVISION = "torchvision:"  # an architecture by torchvision builder name, e.g. torchvision:resnet50
STUDENT_CNN = "student_cnn"  # the built-in student, distillery.models.StudentCNN
# torchvision builders a student may be: each goes through torch-pruning, int8 QAT and ONNX export (a test runs each)
# and takes a width multiplier. Not ShuffleNetV2: torch-pruning cannot trace its channel shuffle.
TORCHVISION_STUDENTS = ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large")
STUDENT_ARCHS = (STUDENT_CNN, *(TORCHVISION + name for name in TORCHVISION_STUDENTS))
COMBINE_RULES = ("mean_probabilities", "mean_logits", "fitted_weights")  # distillery.combine joins by them
GREY_PAPER = 60  # 0..255: the ground of the grey-paper sets the report and the bench measure
