{{/* Labels every object carries. */}}
{{- define "hapod.labels" -}}
app.kubernetes.io/part-of: hapod
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Name of a cluster-scoped object of this release: "<release>-<suffix>", so that two
releases install side by side (release names must then differ). The release `hapod` gets the
names of deploy/base. Argument: (list suffix $). */}}
{{- define "hapod.clusterName" -}}
{{- printf "%s-%s" (index . 1).Release.Name (index . 0) -}}
{{- end -}}

{{/* The label a workload selects its pods by, as YAML: `key` with its value in `podLabels`,
the label that names the pods' group. A pod relabeled out of its group thus leaves its workload
too, which replaces it (the usual way to take a pod aside for debugging). Never the role label,
which changes on live pods, and no other value: a workload's selector cannot change, so an
upgrade that changed it would fail. Argument: (list key podLabels). */}}
{{- define "hapod.selectorLabels" -}}
{{- $key := index . 0 -}}{{- $labels := index . 1 -}}
{{- if not (hasKey $labels $key) -}}
{{- fail (printf "podLabels must contain the label %q: the workload selects its pods by it" $key) -}}
{{- end -}}
{{ $key }}: {{ index $labels $key | quote }}
{{- end -}}

{{/* "repository:tag", tag defaulting to the chart's appVersion. Argument: (list image $). */}}
{{- define "hapod.image" -}}
{{- $img := index . 0 -}}{{- $root := index . 1 -}}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) -}}
{{- end -}}

{{/* A map of labels as a label selector string: a=b,c=d (sorted keys). */}}
{{- define "hapod.selectorString" -}}
{{- $parts := list -}}
{{- range $k, $v := . -}}{{- $parts = append $parts (printf "%s=%s" $k $v) -}}{{- end -}}
{{- join "," $parts -}}
{{- end -}}

{{/* Downward API env shared by the controller and the sample app. */}}
{{- define "hapod.downwardEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- end -}}

{{/* Preferred anti-affinity on kubernetes.io/hostname among pods with the given labels. */}}
{{- define "hapod.spreadAffinity" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- toYaml . | nindent 12 }}
{{- end -}}

{{/* Mount point of the notification key Secret; the key is the file "key" in it. */}}
{{- define "hapod.notifyKeyDir" -}}/etc/hapod/notify-key{{- end -}}

{{/* The agent's folder in an app pod (an emptyDir): the epoch file of the application lease. */}}
{{- define "hapod.runDir" -}}/var/run/hapod{{- end -}}

{{- define "hapod.notifyKeyVolume" -}}
- name: notify-key
  secret:
    secretName: {{ .Values.notifyKey.secretName }}
    defaultMode: 288 # 0440: owner and group (fsGroup) read
{{- end -}}

{{- define "hapod.notifyKeyMount" -}}
- name: notify-key
  mountPath: {{ include "hapod.notifyKeyDir" . }}
  readOnly: true
{{- end -}}

{{/* Namespace object. Argument: (list name $). */}}
{{- define "hapod.namespace" -}}
{{- $name := index . 0 -}}{{- $root := index . 1 -}}
apiVersion: v1
kind: Namespace
metadata:
  name: {{ $name }}
  labels:
    {{- include "hapod.labels" $root | nindent 4 }}
    pod-security.kubernetes.io/enforce: {{ $root.Values.namespace.podSecurityEnforce }}
    pod-security.kubernetes.io/warn: {{ $root.Values.namespace.podSecurityEnforce }}
{{- end -}}
