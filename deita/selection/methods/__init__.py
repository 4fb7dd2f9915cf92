"""Selection methods. Each module registers one method in :data:`deita.selection.base.SELECTORS`.

The registry imports every module here on its first lookup, so adding a method is adding a file. Modules
must be cheap to import (no torch or transformers at module level): the config layer imports them to
register schemas.
"""
