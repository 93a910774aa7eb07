"""The runtime a chat model uses: the chat template (``template``), tool calling and the agent loop
(``tools``), the sandbox that runs model-written code (``sandbox``) and ``minillm chat`` (``terminal``)."""
