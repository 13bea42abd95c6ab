"""Built-in mixers; importing this package registers them."""
from core.mixers import attention  # noqa: F401
from core.mixers import linear_attention, retnet, gla, mamba2  # noqa: F401
from core.mixers import deltanet, rwkv7  # noqa: F401
from core.mixers import mlstm, slstm  # noqa: F401
from core.mixers import hyena, dilated_conv, aaren  # noqa: F401
from core.mixers import mamba, s4d, lru, rglru, mingru, hgrn  # noqa: F401
from core.mixers import fox  # noqa: F401
from core.mixers import titans, titans_mac, miras, atlas  # noqa: F401
