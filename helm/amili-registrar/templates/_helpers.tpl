{{/*
The chart's name, truncated to 63 characters (a label value's limit).
*/}}
{{- define "amili-registrar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name: the resources' names.
*/}}
{{- define "amili-registrar.fullname" -}}
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

{{- define "amili-registrar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The standard labels, on every resource.
*/}}
{{- define "amili-registrar.labels" -}}
helm.sh/chart: {{ include "amili-registrar.chart" . }}
{{ include "amili-registrar.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: consumer
{{- end }}

{{/*
The labels that select the pods (immutable in a Deployment: never add to them).
*/}}
{{- define "amili-registrar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "amili-registrar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "amili-registrar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "amili-registrar.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The Secret the secret variables come from: the existing one, or the chart-managed one.
*/}}
{{- define "amili-registrar.secretName" -}}
{{- default (include "amili-registrar.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{- define "amili-registrar.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The secret variables: each is taken from the Secret when its key is there (all optional, so that an
existing Secret needs only the keys it uses; LEDGER_URL there wins over the ConfigMap's).
*/}}
{{- define "amili-registrar.secretKeys" -}}
AMILI_API_KEY: amiliApiKey
AMILI_PRIVATE_KEY: amiliPrivateKey
LEDGER_URL: ledgerUrl
KAFKA_SASL_USERNAME: kafkaSaslUsername
KAFKA_SASL_PASSWORD: kafkaSaslPassword
{{- end }}

{{/*
KEDA's name for the SASL mechanism.
*/}}
{{- define "amili-registrar.kedaSasl" -}}
{{- $m := .Values.kafka.saslMechanism }}
{{- if eq $m "PLAIN" }}plaintext
{{- else if eq $m "SCRAM-SHA-256" }}scram_sha256
{{- else if eq $m "SCRAM-SHA-512" }}scram_sha512
{{- else }}none
{{- end }}
{{- end }}

{{- define "amili-registrar.kafkaSasl" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol }}true{{ end }}
{{- end }}

{{- define "amili-registrar.kafkaTls" -}}
{{- if has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL") }}true{{ end }}
{{- end }}

{{/*
Checks across values that the schema cannot express; included by the Deployment, so a bad
combination fails the render.
*/}}
{{- define "amili-registrar.validate" -}}
{{- $grace := .Values.config.shutdownGraceSeconds | float64 }}
{{- if le (.Values.terminationGracePeriodSeconds | float64) $grace }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be larger than config.shutdownGraceSeconds (%v)" .Values.terminationGracePeriodSeconds .Values.config.shutdownGraceSeconds) }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- if gt (int .Values.autoscaling.maxReplicas) (int .Values.kafka.partitions) }}
{{- fail (printf "autoscaling.maxReplicas (%v) is larger than kafka.partitions (%v): the extra consumers would sit idle" .Values.autoscaling.maxReplicas .Values.kafka.partitions) }}
{{- end }}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) }}
{{- fail (printf "autoscaling.minReplicas (%v) is larger than autoscaling.maxReplicas (%v)" .Values.autoscaling.minReplicas .Values.autoscaling.maxReplicas) }}
{{- end }}
{{- end }}
{{- if and (include "amili-registrar.kafkaSasl" .) (not .Values.kafka.saslMechanism) }}
{{- fail (printf "kafka.securityProtocol %s needs kafka.saslMechanism" .Values.kafka.securityProtocol) }}
{{- end }}
{{- end }}
