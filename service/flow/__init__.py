"""Flow control towards Amili: how many calls at once (``limit``), how fast (``budget``), and in
which order across creditors (``fair``). Pure algorithms over an injected clock, plus
``control.AmiliFlow``, which the Amili client reports each call to."""
