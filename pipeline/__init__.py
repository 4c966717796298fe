"""Transfer-learning segmentation toolkit on MONAI.

The modules hold the code that the bundles in ``bundles/`` reference through ``_target_``;
``python -m pipeline <verb>`` holds the tools.
"""

from __future__ import annotations

import logging
import warnings

__version__ = "0.1.0"
__all__ = ["__version__"]

# Every LoadImaged tries MONAI's GPU DICOM decoder plugin and warns when it is absent: harmless noise.
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=r"NvImgCodecPydicomReader.*")
warnings.filterwarnings("ignore", message=r".*Orientationd.__init__:labels.*")
