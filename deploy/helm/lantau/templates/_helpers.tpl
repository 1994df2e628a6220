{{/* Names and labels. */}}
{{- define "lantau.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lantau.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "lantau.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lantau.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lantau.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "lantau.labels" -}}
helm.sh/chart: {{ include "lantau.chart" . }}
{{ include "lantau.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lantau
{{- end }}

{{/* Labels of one component: (dict "root" $ "component" "signer") */}}
{{- define "lantau.componentSelectorLabels" -}}
{{ include "lantau.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "lantau.componentLabels" -}}
{{ include "lantau.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "lantau.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "lantau.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lantau.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "lantau.auditKeySecretName" -}}
{{- default (printf "%s-audit-record-key" (include "lantau.fullname" .)) .Values.audit.recordKey.existingSecret }}
{{- end }}

{{- define "lantau.pinSecretName" -}}
{{- default (printf "%s-pins" (include "lantau.fullname" .)) .Values.pins.existingSecret }}
{{- end }}

{{/* The ids of the HSM nodes: hsm-1 .. hsm-N, one per StatefulSet pod (ordinal + 1). */}}
{{- define "lantau.hsmNodeIds" -}}
{{- if lt (int .Values.hsmNode.replicas) 1 }}
{{- fail "hsmNode.replicas must be at least 1 (hsmNode.paused stops them instead)" }}
{{- end }}
{{- range $i := until (int .Values.hsmNode.replicas) }}
{{ printf "hsm-%d" (add1 $i) }}
{{- end }}
{{- end }}

{{/*
lantau.toml (libs/config.py). (dict "root" $ "ceremony" bool): the key-ceremony Job
mounts every token volume at /var/lib/lantau/ceremony/<node>, an hsm-node pod its own
at /var/lib/lantau/token.
*/}}
{{- define "lantau.toml" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
# Rendered by the lantau Helm chart; fields: libs/config.py.
[nats]
servers = {{ toJson $v.nats.servers }}
# Mutual TLS (Secret nats.tlsSecret); each pod's own nkey seed: LANTAU__NATS__SEED_FILE.
ca_file = "/var/run/lantau/tls/ca.crt"
cert_file = "/var/run/lantau/tls/tls.crt"
key_file = "/var/run/lantau/tls/tls.key"
stream_replicas = {{ int $v.nats.streamReplicas }}
retention_days = {{ int $v.nats.retentionDays }}
duplicate_window_s = {{ int $v.nats.duplicateWindowSeconds }}
connect_timeout_s = {{ float64 $v.nats.connectTimeoutSeconds }}
ack_wait_s = {{ float64 $v.nats.ackWaitSeconds }}

[logging]
json = {{ $v.logging.json }}
level = {{ toJson $v.logging.level }}
{{- range $id := splitList "\n" (include "lantau.hsmNodeIds" $root | trim) }}

[[hsm_nodes]]
id = {{ toJson $id }}
module = {{ toJson $v.hsmNode.module }}
token_label = {{ toJson (printf "%s-%s" $v.hsmNode.tokenLabelPrefix (trimPrefix "hsm-" $id)) }}
pin_file = {{ toJson (printf "/var/run/lantau/pins/%s-pin" $id) }}
{{- if $v.hsmNode.softhsm }}
{{- if $.ceremony }}
softhsm_conf = {{ toJson (printf "/var/lib/lantau/ceremony/%s/ceremony-softhsm2.conf" $id) }}
{{- else }}
softhsm_conf = "/var/lib/lantau/token/softhsm2.conf"
{{- end }}
{{- end }}
# Each pod's own volume: a node's replay record is never shared with another node.
state_dir = "/var/lib/lantau/token/state"
{{- with $v.hsmNode.region }}
region = {{ toJson . }}
{{- end }}
role = "pool"
sessions = {{ int $v.hsmNode.sessions }}
beat_interval_ms = {{ int $v.hsmNode.beatIntervalMs }}
metrics_port = {{ int $v.metricsPort }}
{{- end }}
{{- range $v.requesters }}

[[requesters]]
name = {{ toJson .name }}
public_key = {{ toJson .publicKey }}
{{- with .nkey }}
nkey = {{ toJson . }}
{{- end }}
keys = {{ toJson (default list .keys) }}
may_create_keys = {{ default false .mayCreateKeys }}
{{- end }}

{{- range $v.approvers }}

[[approvers]]
name = {{ toJson .name }}
nkey = {{ toJson .nkey }}
{{- end }}

[hsm]
timeout_ms = {{ int $v.hsm.timeoutMs }}
max_attempts = {{ int $v.hsm.maxAttempts }}

[signer]
fetch_batch = {{ int $v.signer.fetchBatch }}
max_concurrency = {{ int $v.signer.maxConcurrency }}
metrics_port = {{ int $v.metricsPort }}

[policy]
max_request_age_ms = {{ int $v.policy.maxRequestAgeMs }}
clock_skew_ms = {{ int $v.policy.clockSkewMs }}
order_deadline_ms = {{ int $v.policy.orderDeadlineMs }}
metrics_port = {{ int $v.metricsPort }}
{{- if $v.policy.rules }}
rules_file = "/etc/lantau/policy.toml"
{{- end }}

[audit]
fetch_batch = {{ int $v.audit.fetchBatch }}
metrics_port = {{ int $v.metricsPort }}
record_key_file = "/etc/lantau/audit-key/audit-record-key"
witness_files = {{ toJson $v.audit.witness.files }}

[backup]
kek_label = {{ toJson $v.backup.kekLabel }}
metrics_port = {{ int $v.metricsPort }}
{{- end }}

{{/* Pod anti-affinity: (dict "root" $ "component" "signer" "mode" "soft|hard") */}}
{{- define "lantau.antiAffinity" -}}
podAntiAffinity:
{{- if eq .mode "hard" }}
  requiredDuringSchedulingIgnoredDuringExecution:
    - labelSelector:
        matchLabels:
          {{- include "lantau.componentSelectorLabels" . | nindent 10 }}
      topologyKey: {{ .root.Values.antiAffinityTopologyKey }}
{{- else }}
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        labelSelector:
          matchLabels:
            {{- include "lantau.componentSelectorLabels" . | nindent 12 }}
        topologyKey: {{ .root.Values.antiAffinityTopologyKey }}
{{- end }}
{{- end }}

{{- define "lantau.zoneSpread" -}}
{{- if .root.Values.zoneSpread -}}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "lantau.componentSelectorLabels" . | nindent 8 }}
{{- end }}
{{- end }}

{{- define "lantau.probes" -}}
startupProbe:
  httpGet: {path: /healthz, port: metrics}
  periodSeconds: 2
  failureThreshold: 30
livenessProbe:
  httpGet: {path: /healthz, port: metrics}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: metrics}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
{{- end }}

{{/* The NATS identity Secrets, checked: the platform never connects without them. */}}
{{- define "lantau.tlsSecret" -}}
{{- required "nats.tlsSecret: a Secret with ca.crt, tls.crt, tls.key for NATS (mutual) TLS" .Values.nats.tlsSecret }}
{{- end }}
{{- define "lantau.identitiesSecret" -}}
{{- required "nats.identitiesSecret: a Secret with one nkey seed per platform identity" .Values.nats.identitiesSecret }}
{{- end }}

{{/* Volumes: the TLS files, and the seeds of the given identities (a list), 0440. */}}
{{- define "lantau.natsVolumes" -}}
- name: nats-tls
  secret:
    secretName: {{ include "lantau.tlsSecret" .root }}
    defaultMode: 288 # 0440: root and the pod's fsGroup
- name: nats-identity
  secret:
    secretName: {{ include "lantau.identitiesSecret" .root }}
    defaultMode: 288
    items:
      {{- range .identities }}
      - key: {{ . }}
        path: {{ . }}.seed
      {{- end }}
{{- end }}
{{- define "lantau.natsMounts" -}}
- name: nats-tls
  mountPath: /var/run/lantau/tls
  readOnly: true
- name: nats-identity
  mountPath: /var/run/lantau/nkeys
  readOnly: true
{{- end }}
