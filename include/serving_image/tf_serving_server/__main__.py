"""``python -m tf_serving_server --port=8500 --rest_api_port=8501 --model_name=... --model_base_path=...``"""

import sys

from .main import main

sys.exit(main())
