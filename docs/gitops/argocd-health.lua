-- Argo CD health check for modelyard.io/ModelDeployment, from status.conditions.
-- Install under resource.customizations.health.modelyard.io_ModelDeployment
-- (docs/gitops.md). `obj` is the ModelDeployment.
local hs = {}

local function condition(conditions, type)
  for _, c in ipairs(conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  if c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

local status = obj.status or {}
local conditions = status.conditions or {}

-- A status written for an older spec says nothing about the current one.
if status.observedGeneration ~= nil and obj.metadata ~= nil
    and obj.metadata.generation ~= nil
    and status.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. obj.metadata.generation
  return hs
end

local resolved = condition(conditions, "ModelResolved")
if resolved ~= nil and resolved.status == "False" then
  hs.status = "Degraded"
  hs.message = describe(resolved, "The model reference does not resolve")
  return hs
end

local degraded = condition(conditions, "Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(degraded, "Degraded")
  return hs
end

-- A version waiting for a person is paused work, as Argo shows a paused rollout.
local approved = condition(conditions, "Approved")
if approved ~= nil and approved.status == "False" and approved.reason == "AwaitingApproval" then
  hs.status = "Suspended"
  hs.message = describe(approved, "A new version awaits approval")
  return hs
end

local ready = condition(conditions, "Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "Ready")
  return hs
end

local progressing = condition(conditions, "Progressing")
hs.status = "Progressing"
if progressing ~= nil and progressing.status == "True" then
  hs.message = describe(progressing, "Rolling out")
elseif ready ~= nil then
  hs.message = describe(ready, "Not ready yet")
else
  hs.message = "Waiting for the operator"
end
return hs
