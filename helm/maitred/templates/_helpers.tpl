{{/* Names, labels and image references shared by the templates. */}}

{{- define "maitred.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name: the release name, prefixed with the chart's unless it holds it already. */}}
{{- define "maitred.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 54 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 54 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Name of the operator's Deployment, ServiceAccount and RBAC objects (at most 63 characters). */}}
{{- define "maitred.operatorName" -}}
{{- printf "%s-operator" (include "maitred.fullname" .) -}}
{{- end -}}

{{- define "maitred.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "maitred.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "maitred.peeringName" -}}
{{- default (include "maitred.fullname" .) .Values.peering.name -}}
{{- end -}}

{{- define "maitred.selectorLabels" -}}
app.kubernetes.io/name: {{ include "maitred.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Labels of every object of the release. */}}
{{- define "maitred.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "maitred.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Labels of the operator's objects. */}}
{{- define "maitred.labels" -}}
{{ include "maitred.commonLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* An image reference from {repository, tag, digest}: by digest when there is one. */}}
{{- define "maitred.imageRef" -}}
{{- $image := index . 0 -}}
{{- $defaultTag := index . 1 -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default $defaultTag $image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "maitred.image" -}}
{{- include "maitred.imageRef" (list .Values.image .Chart.AppVersion) -}}
{{- end -}}

{{/* The routers' image: routerImage where given, else the operator's own image. */}}
{{- define "maitred.routerImage" -}}
{{- if .Values.routerImage.repository -}}
{{- include "maitred.imageRef" (list .Values.routerImage .Chart.AppVersion) -}}
{{- else -}}
{{- include "maitred.image" . -}}
{{- end -}}
{{- end -}}

{{/* The CRDs' metadata.annotations: helm keeps them on uninstall unless crds.keep is false. */}}
{{- define "maitred.crdAnnotations" -}}
{{- if .Values.crds.keep -}}
{{- dict "helm.sh/resource-policy" "keep" | toYaml -}}
{{- else -}}
{{- dict | toYaml -}}
{{- end -}}
{{- end -}}

{{/*
The operator's --router-pod-defaults: the `router:` values (empty ones left out) and the chart's imagePullSecrets, as JSON.
*/}}
{{- define "maitred.routerPodDefaults" -}}
{{- $defaults := dict -}}
{{- range $key, $value := .Values.router -}}
{{- if $value }}{{- $_ := set $defaults $key $value -}}{{- end -}}
{{- end -}}
{{- if and .Values.imagePullSecrets (not (hasKey $defaults "imagePullSecrets")) -}}
{{- $_ := set $defaults "imagePullSecrets" .Values.imagePullSecrets -}}
{{- end -}}
{{- toJson $defaults -}}
{{- end -}}
