"""The code MLflow runs to load the SUPIR pyfunc model (models from code: the model holds no pickle).

stages/restore_pyfunc.py ``save_pyfunc`` saves this file as the model's ``python_model``.
"""
import mlflow.models

from stages.restore_pyfunc import SupirPyfunc

mlflow.models.set_model(SupirPyfunc())
