"""Agents and tools from other SDKs as durable, tenant-governed steps.

Each module here needs its optional extra and imports that SDK only when it is imported itself
(``import tenantflow`` never does):

- :mod:`tenantflow.integrations.mcp_tools` (``tenantflow[mcp]``): an MCP server's tools as
  gateway tools named ``server__tool``.
- :mod:`tenantflow.integrations.mcp_server` (``tenantflow[mcp]``): tenantflow as an MCP server.
- :mod:`tenantflow.integrations.openai_agents` (``tenantflow[openai-agents]``): an OpenAI Agents
  SDK agent run as a step.
- :mod:`tenantflow.integrations.pydantic_ai` (``tenantflow[pydantic-ai]``): a PydanticAI agent
  run as a step.
"""
