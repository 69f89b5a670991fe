#!/usr/bin/env ruby
# frozen_string_literal: true

# Renders BOSH job templates the way the director does, for tests and for the lab (there is no
# BOSH director here). It follows bosh-template's EvaluationContext:
#
#   p(name) / p([names]) / p(name, default), if_p(*names) { } .else { } .else_if_p(...)
#   spec.deployment / name / id / index / az / ip / address / bootstrap / networks / job.name
#   link(name).instances[].name/id/index/az/address/bootstrap, link(name).address,
#   link(name).p(...) / .if_p(...), if_link(name) { |link| } .else { }
#
# Properties are bound as the director binds them (bosh-template's PropertyHelper#copy_property,
# run by the director's bind_properties on the manifest as written, before any ((variable)) is
# resolved): every property the job's spec declares, walked out of the manifest's nested hashes
# by its dotted name, else the spec's default; anything else is dropped. A value in the way of
# a dotted name is the director's error (`tls: ((cert))` for a spec declaring `tls.ca`: "Property
# 'tls.ca' expects a hash, but received 'String'"), which is why a certificate variable is one
# property in the spec. A link's properties are the provider job's properties filtered to what
# its `provides` entry lists. p() walks into a property's value (`p('tls.certificate')` of a
# declared `tls`), as it walks the hash the director renders with.
#
# Stricter than BOSH on purpose (a lint, since this is how the release is tested): using a
# property the spec does not declare is an error even with a default, a link the spec does not
# consume is an error, and a manifest property the spec does not declare is an error.
#
# Usage: render-template.rb RELEASE_DIR < CONTEXT.json
#        render-template.rb --bind RELEASE_DIR < {"job": "bosh-pilot", "properties": {...}}
#
# --bind only binds one job's manifest properties to its spec and prints the result as JSON:
# what the director does at deploy time, before it resolves variables and renders.
#
#   {"spec": {"deployment": "d", "name": "ig", "id": "uuid", "index": 0, "az": "z1",
#             "ip": "10.0.0.5", "address": "10.0.0.5", "bootstrap": true},
#    "jobs": [{"name": "virtual-ip-agent", "output": "/where/to/render",
#              "properties": {...manifest properties of this job...},
#              "links": {"bosh-pilot": {"address": "q-s0.bosh-pilot...",
#                                       "instances": [{"name": "bosh-pilot", "id": "...",
#                                                      "index": 0, "az": "z1",
#                                                      "address": "10.0.0.9", "bootstrap": true}],
#                                       "provider": {"job": "bosh-pilot",
#                                                    "properties": {...}}}}}]}
#
# Every template of the job's spec, and `monit`, is rendered into `output`; templates whose
# destination is under bin/ are made executable, as the BOSH agent does. Errors name the job,
# the template and what was wrong, and exit 1.

require 'erb'
require 'json'
require 'yaml'
require 'ostruct'
require 'fileutils'

class RenderError < StandardError; end

# Dotted-name lookup in nested hashes, as bosh-template's PropertyHelper does.
module PropertyLookup
  def self.lookup(hash, name)
    name.to_s.split('.').reduce(hash) do |node, key|
      return nil unless node.is_a?(Hash) && node.key?(key)

      node[key]
    end
  end

  # bosh-template's copy_property: `name` walked out of `src` into `dst`, else `default`.
  def self.copy(dst, src, name, default)
    value = src
    name.split('.').each do |key|
      raise RenderError, "Property '#{name}' expects a hash, but received '#{value.class}'" unless value.is_a?(Hash)

      value = value[key]
      break if value.nil?
    end
    store(dst, name, value.nil? ? Marshal.load(Marshal.dump(default)) : value)
  end

  def self.store(hash, name, value)
    *parents, leaf = name.split('.')
    target = parents.reduce(hash) { |node, key| node[key] ||= {} }
    target[leaf] = value
  end

  # Every dotted path of a nested hash that is not a prefix of a declared name.
  def self.undeclared(hash, declared, prefix = nil)
    hash.flat_map do |key, value|
      name = prefix ? "#{prefix}.#{key}" : key.to_s
      next [] if declared.include?(name)
      next undeclared(value, declared, name) if value.is_a?(Hash) && declared.any? { |d| d.start_with?("#{name}.") }

      [name]
    end
  end
end

class JobSpec
  attr_reader :name, :dir, :templates, :properties, :consumes, :provides

  def initialize(release_dir, job)
    @dir = File.join(release_dir, 'jobs', job)
    path = File.join(@dir, 'spec')
    raise RenderError, "job `#{job}`: no spec at #{path}" unless File.file?(path)

    spec = YAML.safe_load(File.read(path)) || {}
    @name = spec['name']
    @templates = spec['templates'] || {}
    @properties = spec['properties'] || {}
    @consumes = spec['consumes'] || []
    @provides = spec['provides'] || []
  end

  # A declared property, or a key inside one's value (`tls.certificate` of a declared `tls`).
  def declared?(name)
    parts = name.split('.')
    (1..parts.length).any? { |n| @properties.key?(parts.first(n).join('.')) }
  end

  # The director's view of this job's properties: declared names only, defaults filled in.
  def resolve(manifest_properties, names = @properties.keys)
    manifest_properties ||= {}
    bound = names.each_with_object({}) do |name, resolved|
      PropertyLookup.copy(resolved, manifest_properties, name, @properties.dig(name, 'default'))
    rescue RenderError => e
      raise RenderError, "job `#{@name}`: #{e.message}"
    end
    extra = PropertyLookup.undeclared(manifest_properties, @properties.keys)
    unless extra.empty?
      raise RenderError, "job `#{@name}`: the manifest sets #{extra.map { |e| "`#{e}`" }.join(', ')}, " \
                         'which its spec does not declare'
    end
    bound
  end
end

# The `else` half of if_p / if_link, as in bosh-template.
class ActiveElseBlock
  def initialize(context)
    @context = context
  end

  def else
    yield
  end

  def else_if_p(*names, &block)
    @context.if_p(*names, &block)
  end
end

class InactiveElseBlock
  def else; end

  def else_if_p(*_names)
    InactiveElseBlock.new
  end
end

# Property access shared by the template context and links.
module PropertyAccess
  def p(*args)
    names = Array(args[0])
    names.each do |name|
      check_declared(name)
      value = PropertyLookup.lookup(@raw_properties, name)
      return value unless value.nil?
    end
    return args[1] if args.length == 2

    raise RenderError, "#{where}: property #{names.map { |n| "`#{n}`" }.join(' or ')} is not set and has no default"
  end

  def if_p(*names)
    values = names.map do |name|
      check_declared(name)
      value = PropertyLookup.lookup(@raw_properties, name)
      return ActiveElseBlock.new(self) if value.nil?

      value
    end
    yield(*values)
    InactiveElseBlock.new
  end
end

class EvaluationLinkInstance
  attr_reader :name, :index, :id, :az, :address, :bootstrap

  def initialize(instance)
    @name = instance['name']
    @index = instance['index']
    @id = instance['id']
    @az = instance['az']
    @address = instance['address']
    @bootstrap = instance['bootstrap']
  end
end

class EvaluationLink
  include PropertyAccess
  attr_reader :instances, :properties

  def initialize(link_name, instances, properties, declared, address)
    @link_name = link_name
    @instances = instances.map { |i| EvaluationLinkInstance.new(i) }
    @raw_properties = properties
    @properties = properties
    @declared = declared
    @address = address
  end

  def address(_criteria = {})
    @address
  end

  private

  def where
    "link `#{@link_name}`"
  end

  def check_declared(name)
    return if @declared.include?(name)

    raise RenderError, "link `#{@link_name}`: property `#{name}` is not among the properties the provider's " \
                       "`provides` entry shares (#{@declared.join(', ')})"
  end
end

class EvaluationContext
  include PropertyAccess
  attr_reader :name, :index, :spec, :properties, :raw_properties

  def initialize(job_spec, raw_properties, spec, links, template)
    @job_spec = job_spec
    @template = template
    @raw_properties = raw_properties
    @properties = to_openstruct(raw_properties)
    @spec = to_openstruct(spec.merge('properties' => raw_properties, 'job' => { 'name' => job_spec.name }))
    @name = job_spec.name
    @index = spec['index']
    @links = links
  end

  def link(name)
    check_consumed(name)
    @links.fetch(name) { raise RenderError, "#{where}: link `#{name}` is not provided (consumes it without `optional: true`?)" }
  end

  def if_link(name)
    check_consumed(name)
    return ActiveElseBlock.new(self) unless @links.key?(name)

    yield @links[name]
    InactiveElseBlock.new
  end

  def binding_for_erb
    binding
  end

  private

  def where
    "job `#{@job_spec.name}` template `#{@template}`"
  end

  def check_declared(name)
    return if @job_spec.declared?(name)

    raise RenderError, "#{where}: property `#{name}` is not declared in #{File.join(@job_spec.dir, 'spec')}"
  end

  def check_consumed(name)
    return if @job_spec.consumes.any? { |c| c['name'] == name }

    raise RenderError, "#{where}: link `#{name}` is not in the `consumes` of #{File.join(@job_spec.dir, 'spec')}"
  end

  def to_openstruct(value)
    case value
    when Hash then OpenStruct.new(value.transform_values { |v| to_openstruct(v) })
    when Array then value.map { |v| to_openstruct(v) }
    else value
    end
  end
end

class Renderer
  def initialize(release_dir)
    @release_dir = release_dir
  end

  def render_all(context)
    spec = context.fetch('spec')
    context.fetch('jobs').each { |job| render_job(job, spec) }
  end

  private

  def render_job(job, spec)
    job_spec = JobSpec.new(@release_dir, job.fetch('name'))
    properties = job_spec.resolve(job['properties'])
    links = resolve_links(job_spec, job['links'] || {})
    output = job.fetch('output')
    templates = job_spec.templates.merge('monit' => 'monit')
    templates.each do |source, destination|
      path = source == 'monit' ? File.join(job_spec.dir, 'monit') : File.join(job_spec.dir, 'templates', source)
      raise RenderError, "job `#{job_spec.name}`: template #{path} is listed in the spec but missing" unless File.file?(path)

      context = EvaluationContext.new(job_spec, properties, spec, links, source)
      text = begin
        ERB.new(File.read(path), trim_mode: '-').tap { |erb| erb.filename = path }.result(context.binding_for_erb)
      rescue RenderError
        raise
      rescue StandardError, ScriptError => e
        raise RenderError, "job `#{job_spec.name}` template `#{source}`: #{e.class}: #{e.message}"
      end
      target = File.join(output, destination)
      FileUtils.mkdir_p(File.dirname(target))
      File.write(target, text)
      File.chmod(destination.start_with?('bin/') ? 0o755 : 0o640, target)
    end
  end

  def resolve_links(job_spec, links)
    links.to_h do |name, link|
      consumed = job_spec.consumes.find { |c| c['name'] == name }
      raise RenderError, "job `#{job_spec.name}`: link `#{name}` is given but its spec does not consume it" unless consumed

      provider = link.fetch('provider')
      provider_spec = JobSpec.new(@release_dir, provider.fetch('job'))
      provided = provider_spec.provides.find { |pr| pr['type'] == consumed['type'] }
      unless provided
        raise RenderError, "job `#{job_spec.name}`: link `#{name}` wants type `#{consumed['type']}`, " \
                           "which job `#{provider_spec.name}` does not provide"
      end
      shared = provided['properties'] || []
      properties = provider_spec.resolve(provider['properties'], shared)
      [name, EvaluationLink.new(name, link.fetch('instances'), properties, shared, link['address'])]
    end
  end
end

begin
  bind_only = ARGV.first == '--bind'
  release_dir = ARGV.fetch(bind_only ? 1 : 0) do
    raise RenderError, 'usage: render-template.rb [--bind] RELEASE_DIR < CONTEXT.json'
  end
  input = JSON.parse($stdin.read)
  if bind_only
    puts JSON.generate(JobSpec.new(release_dir, input.fetch('job')).resolve(input['properties']))
  else
    Renderer.new(release_dir).render_all(input)
  end
rescue RenderError, KeyError, JSON::ParserError => e
  warn "render-template: #{e.message}"
  exit 1
end
