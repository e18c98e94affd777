{{/* The release's full name (at most 63 characters: it names Services and webhooks). */}}
{{- define "k1s0-eventstore.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "k1s0-eventstore.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "k1s0-eventstore.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "k1s0-eventstore.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: k1s0-eventstore
{{- end -}}

{{- define "k1s0-eventstore.selectorLabels" -}}
app.kubernetes.io/name: {{ include "k1s0-eventstore.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "k1s0-eventstore.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "k1s0-eventstore.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* registry/repository:tag or @digest */}}
{{- define "k1s0-eventstore.image" -}}
{{- $repo := .Values.image.repository -}}
{{- if .Values.image.registry -}}{{- $repo = printf "%s/%s" .Values.image.registry $repo -}}{{- end -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repo .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The sidecar image: its own values where set; by default the slim sidecar image built next
to the operator's (`make image`): <image.repository>-sidecar with the same registry and tag. */}}
{{- define "k1s0-eventstore.sidecarImage" -}}
{{- $s := .Values.sidecar.image -}}
{{- $repo := default (printf "%s-sidecar" .Values.image.repository) $s.repository -}}
{{- $registry := default .Values.image.registry $s.registry -}}
{{- if $registry -}}{{- $repo = printf "%s/%s" $registry $repo -}}{{- end -}}
{{- printf "%s:%s" $repo (default (default .Chart.AppVersion .Values.image.tag) $s.tag) -}}
{{- end -}}

{{- define "k1s0-eventstore.webhookService" -}}
{{- printf "%s-webhook" (include "k1s0-eventstore.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "k1s0-eventstore.webhookSecret" -}}
{{- printf "%s-webhook-tls" (include "k1s0-eventstore.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Cluster-scoped: the namespace keeps two releases of the same name apart. */}}
{{- define "k1s0-eventstore.webhookConfiguration" -}}
{{- printf "%s-%s" (include "k1s0-eventstore.fullname" .) .Release.Namespace | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "k1s0-eventstore.clusterRole" -}}
{{- printf "%s-%s" (include "k1s0-eventstore.fullname" .) .Release.Namespace | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The Kopf peering object's name (operator.peering.name, else the release's full name). */}}
{{- define "k1s0-eventstore.peeringName" -}}
{{- default (include "k1s0-eventstore.fullname" .) .Values.operator.peering.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
